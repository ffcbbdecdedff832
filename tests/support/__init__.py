"""Helpers the tests share: throwaway PostgreSQL clusters, pvsd subprocesses, free ports."""
