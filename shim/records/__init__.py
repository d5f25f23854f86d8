"""What each path did on one call, the comparison record built from both, and where records go."""
