"""The bundled labeling tool: collect human rankings of K responses per prompt for stage 2.

    rlhf-stack label generate --model CKPT --prompts prompts.jsonl -k 4 --out candidates.jsonl
    rlhf-stack label annotators add alice            # prints alice's token
    rlhf-stack label serve candidates.jsonl --db labels.sqlite --min-annotations 2
    rlhf-stack label export --db labels.sqlite --out rankings.jsonl [--pairs pairs.jsonl]
    rlhf-stack label stats --db labels.sqlite

Modules (each cheap to import; fastapi/uvicorn/torch load only where used):

- `candidates`: the candidates file format (what `generate` writes and `serve` reads).
- `generate`:   sample K responses per prompt from a checkpoint, batched and resumable.
- `store`:      SQLite storage (WAL, append-only submissions, schema version).
- `assign`:     leases, submissions and progress: who ranks what next.
- `security`:   install secret, signed sessions, CSRF tokens, Host/Origin/size guard.
- `app`:        the FastAPI app; `static/` holds the page (plain HTML/JS/CSS, no build step).
- `settings`:   `ServeSettings` (what the server needs) and the per-response flags.
- `server`:     `serve()` (checks the bind, imports candidates, runs uvicorn).
- `export`, `aggregate`, `stats`: rankings/pairs export, Borda / ranked pairs, agreement.
"""
