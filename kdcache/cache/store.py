"""Former home of the reader and the writer, kept importable for the training modules.

The reader is :mod:`kdcache.cache.reader` and the writer :mod:`kdcache.cache.writer`; import from
those. ``kdcache/training`` still imports these names from here until its rewrite switches to them
(then this module goes).
"""

from kdcache.cache.reader import CacheReader, open_cache
from kdcache.cache.writer import CacheWriter, open_for_writing

__all__ = ["CacheReader", "CacheWriter", "open_cache", "open_for_writing"]
