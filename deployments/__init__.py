"""How the flows are run, served and deployed."""
