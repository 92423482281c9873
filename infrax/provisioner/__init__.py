"""The provisioner: the interface to container providers."""
