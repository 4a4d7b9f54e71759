"""The one exception type that means "the input is wrong": no retry, exit code 2.

Everything else (a lost Ray worker, a corrupt work file that pyarrow cannot read,
an S3 hiccup, an error raised inside a Ray task) is treated as transient: the
Prefect task is retried and the CLI exits 1. A plain ``ValueError`` is *not* bad
input — pyarrow's ``ArrowInvalid`` is one — so only errors that name something
the user gave (catalog, config, names, prior run) derive from :class:`BadInput`.
"""

from __future__ import annotations

import sys


class BadInput(ValueError):
    """The catalog, config, a name or the prior run cannot be used as given; retrying cannot help."""


def is_bad_input(exc: BaseException) -> bool:
    """BadInput, or rqvae_core's IdSpaceError (the catalog does not fit the ID space; the core cannot import tasks).

    Looked up in ``sys.modules`` so that importing this module stays free of torch
    (the CLI imports it first): if rqvae_core.ids was never imported, nothing raised its error.
    """
    if isinstance(exc, BadInput):
        return True
    ids = sys.modules.get("rqvae_core.ids")
    return ids is not None and isinstance(exc, ids.IdSpaceError)
