"""Staging datasets to a cluster's scratch: survey, transfer, verification."""
