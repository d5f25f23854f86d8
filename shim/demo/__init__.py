"""``shim demo``: kiwi's call sites driven through a rollout on the simulator."""
