"""Decision logs and policy files into reports: the inventory of observed
traffic, proposed policies, replay of a policy change, the scorecard."""
