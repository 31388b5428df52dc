"""One module per public data format; each turns source records into rows of our formats.

A source module exposes `KINDS` (the `--to` kinds it can produce) and
`rows(records, to, **options) -> Iterator[dict | Skip]`, where `records` yields
`(line, record)` pairs. Malformed input raises `RowError` (the driver in `data_tools.convert`
adds `path:line`); input that is well formed but unusable (identical chosen and rejected, an empty
response) yields a `Skip` that is counted and reported, never silently dropped.

A new format is one new module here: its file name is the source name (`_` read as `-`), found
without a list to update. `common` and `readers` are helpers, not formats.
"""

import pkgutil

HELPERS = ("common", "readers")

SOURCES = {info.name.replace("_", "-"): f"{__name__}.{info.name}"
           for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name) if info.name not in HELPERS}
