"""Ray Serve deployments of the relay (a thin wrapper; the relay is remoterl_ray.relay)."""
