"""The zone egress gateway around authz: Envoy's configuration rendered from
typed classes (``envoy_config``), a throwaway CA (``pki``), the one-machine
lab of real processes (``lab``) and the demo tour (``demo``). Tooling for
operators, the demo and the tests: the server never imports it.
"""
