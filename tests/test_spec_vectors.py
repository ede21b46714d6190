"""The test vectors published in docs/cache-format.md §5.6 are what kdcache's code produces.

If a change to a recipe, a dataset loader or the seeding alters any view, this fails: either the
change is a bug, or it changes the format (regenerate with ``tests/make_test_vectors.py --write``
and bump the format version as §6 says).
"""

from __future__ import annotations

import pytest

from tests import make_test_vectors as mtv
from tests.conftest import require_shared_data


@pytest.mark.parametrize(
    "name", ["json", "fingerprint", "digests", "sparse", "imagefolder", "seeds", "digits"]
)
def test_published_vectors_match_the_code(name: str) -> None:
    published = mtv.doc_block(mtv.DOC.read_text(), name)
    assert published is not None, f"docs/cache-format.md lost its vectors:{name} block"
    assert published == mtv.BLOCKS[name](), (
        f"docs/cache-format.md vectors:{name} are stale: run tests/make_test_vectors.py --write"
    )


@pytest.mark.realdata
def test_published_cifar100_vectors_match_the_code() -> None:
    require_shared_data()
    published = mtv.doc_block(mtv.DOC.read_text(), "cifar100")
    assert published is not None
    assert published == mtv.block_cifar100()
