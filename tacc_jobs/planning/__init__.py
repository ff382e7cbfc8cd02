"""Planning: the TACC queue catalog (data), the SU charge rule, the planner."""
