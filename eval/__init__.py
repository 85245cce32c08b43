"""Offline evaluation: ranking metrics and justification text metrics."""
