"""Layer 6: trainer-side remote envs and the integrations that construct them."""
