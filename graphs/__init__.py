"""Graph definitions: the MPO loop as the paper draws it."""
