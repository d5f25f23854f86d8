"""Kiwi, a pantry and meal-planning app, and its cf-orch call sites."""
