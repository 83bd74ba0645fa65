"""Deployment: the install script, nginx, Kubernetes and compose files, and the local cluster."""
