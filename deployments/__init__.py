"""Ray Serve deployments: the two model pools, the router ingress and the app builder."""
