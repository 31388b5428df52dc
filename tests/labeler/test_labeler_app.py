"""The HTTP API, in process (FastAPI TestClient): sessions, tokens, the ranking round trip."""

from __future__ import annotations

import re

from labeler_helpers import csrf_headers, make_app, sample_items, write_candidates

from data_tools.labeler import store


def add_person(settings, name: str) -> str:
    conn = store.connect(settings.db)
    try:
        return store.add_annotator(conn, name)
    finally:
        conn.close()


def login(client, token: str) -> dict:
    return client.post("/api/login", json={"token": token}, headers=csrf_headers(client))


def test_page_and_assets_are_served(tmp_path, candidates_file):
    client, _ = make_app(tmp_path, candidates_file)
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/static/app.js" defer></script>' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    for asset in ("/", "/static/app.js", "/static/style.css"):  # no CDN: nothing loads from elsewhere
        assert not re.search(r"https?://|//cdn|@import", client.get(asset).text), asset


def test_local_round_trip_without_tokens(tmp_path, candidates_file):
    client, _ = make_app(tmp_path, candidates_file)
    session = client.get("/api/session").json()
    assert session["annotator"] == "local" and session["likert"] == [1, 7]
    assert "hallucination" in {f["name"] for f in session["flags"]}
    item = client.get("/api/next").json()["item"]
    assert item["id"] == "item-0" and sorted(r["index"] for r in item["responses"]) == [0, 1, 2]
    body = {"client_id": "local-000001", "item_id": "item-0", "kind": "ranked", "ranks": [1, 1, 2],
            "ratings": [7, None, 2], "flags": [[], ["hallucination"], []], "note": "close call"}
    ack = client.post("/api/submit", json=body, headers={"X-CSRF-Token": session["csrf"]}).json()
    assert ack == {"ok": True, "duplicate": False, "item_id": "item-0", "version": 1}
    data = client.get("/api/next").json()
    assert data["item"]["id"] == "item-1" and data["progress"]["mine"] == 1 and data["progress"]["complete"] == 1
    edit = client.get("/api/items/item-0").json()["item"]
    assert edit["previous"]["ratings"] == [7, None, 2] and edit["previous"]["note"] == "close call"
    body.update(client_id="local-000002", ranks=[1, 2, 3])
    assert client.post("/api/submit", json=body, headers={"X-CSRF-Token": session["csrf"]}).json()["version"] == 2
    assert client.get("/api/history").json()["items"][0]["version"] == 2


def test_tokens_required(tmp_path, candidates_file):
    client, settings = make_app(tmp_path, None, require_tokens=True)
    token = add_person(settings, "alice")
    from data_tools.labeler.server import prepare

    prepare(settings, candidates_file)
    assert client.get("/api/session").json()["annotator"] is None
    assert client.get("/api/next").status_code == 401
    assert login(client, "not-a-token").status_code == 401
    response = login(client, token)
    assert response.status_code == 200 and response.json()["annotator"] == "alice"
    assert client.get("/api/next").json()["item"]["id"] == "item-0"
    assert client.get("/api/session").json()["annotator"] == "alice"
    # A removed annotator's session stops working at once.
    conn = store.connect(settings.db)
    store.remove_annotator(conn, "alice")
    conn.close()
    assert client.get("/api/next").status_code == 401
    client.cookies.clear()
    assert client.get("/api/next").status_code == 401


def test_login_rotates_the_session(tmp_path, candidates_file):
    client, settings = make_app(tmp_path, candidates_file)
    token = add_person(settings, "bob")
    before = client.get("/api/session").json()["csrf"]
    cookie_before = client.cookies.get("labeler_session")
    after = login(client, token).json()["csrf"]
    assert after != before and client.cookies.get("labeler_session") != cookie_before
    response = client.post("/api/logout", json={}, headers={"X-CSRF-Token": after})
    assert response.status_code == 200 and client.get("/api/session").json()["annotator"] == "local"


def test_pair_item_both_bad_and_not_rankable(tmp_path):
    items = [{"id": "pair", "prompt": "Hi", "completions": ["Hello", "Go away"]}] + sample_items(1)
    client, settings = make_app(tmp_path, write_candidates(tmp_path / "c.jsonl", items))
    headers = csrf_headers(client)
    assert client.get("/api/next").json()["item"]["k"] == 2
    body = {"client_id": "pair-0000001", "item_id": "pair", "kind": "ranked", "ranks": [1, 1], "item_flags": ["both_bad"]}
    assert client.post("/api/submit", json=body, headers=headers).status_code == 200
    client.get("/api/next")
    refusal = {"client_id": "nr-00000001", "item_id": "item-0", "kind": "not_rankable", "reason": ""}
    response = client.post("/api/submit", json=refusal, headers=headers)
    assert response.status_code == 422 and "reason" in response.json()["detail"]
    refusal["reason"] = "prompt is gibberish"
    assert client.post("/api/submit", json=refusal, headers=headers).status_code == 200
    conn = store.connect(settings.db)
    rows = {s["item_id"]: s for s in store.latest_submissions(conn)}
    conn.close()
    assert rows["pair"]["item_flags"] == ["both_bad"] and rows["item-0"]["kind"] == "not_rankable"
    assert client.get("/api/next").json()["item"] is None


def test_malformed_bodies_are_422(tmp_path, candidates_file):
    client, _ = make_app(tmp_path, candidates_file)
    headers = csrf_headers(client)
    client.get("/api/next")
    base = {"client_id": "body-0000001", "item_id": "item-0", "kind": "ranked", "ranks": [1, 2, 3]}
    for bad in ({**base, "extra": 1}, {**base, "client_id": "x"}, {**base, "note": "n" * 2001},
                {**base, "ranks": list(range(1, 11))}, {**base, "ranks": [1, 3, 3]}):
        assert client.post("/api/submit", json=bad, headers=headers).status_code == 422, bad
    assert client.post("/api/submit", json=base, headers=headers).status_code == 200
