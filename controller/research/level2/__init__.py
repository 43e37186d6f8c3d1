"""Level 2, the mechanism loop, and the controller's side of mechanisms: their sandboxed
hosts (runtime), gates, contract test and hook records."""
