"""The upstream side: the HTTP client and its network settings, the page and blob cache,
file downloads shared by every request, prefetching, and the readiness monitor.
"""
