"""One module per public data format; each turns source records into rows of our formats.

A source module exposes `KINDS` (the `--to` kinds it can produce) and
`rows(records, to, **options) -> Iterator[dict | Skip]`, where `records` yields
`(line, record)` pairs. Malformed input raises `RowError` (the driver in `data_tools.convert`
adds `path:line`); input that is well formed but unusable (identical chosen and rejected, an empty
response) yields a `Skip` that is counted and reported, never silently dropped.
"""

SOURCES = {
    "hh-rlhf": "data_tools.sources.hh_rlhf",
    "ultrafeedback": "data_tools.sources.ultrafeedback",
    "oasst": "data_tools.sources.oasst",
    "trl": "data_tools.sources.trl",
    "argilla": "data_tools.sources.argilla",
    "labelstudio": "data_tools.sources.labelstudio",
    "alpaca": "data_tools.sources.alpaca",
}
