"""``kdcache train``: students from a cache (or a live teacher, or labels alone)."""
