"""Discovery and ids: create_only on a tombstone, ListArtifacts cursors and page sizes, and
what listings show of an artifact whose contract denies `read`. Real server."""

from __future__ import annotations

import base64

import grpc
import pytest

from tests.conftest import ServerProcess, fails, uid

C = grpc.StatusCode


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    s = ServerProcess(tmp_path_factory.mktemp("listing") / "world").start()
    yield s
    s.kill()


def test_create_only_on_a_tombstone_answers_already_exists(world):
    a = world.agent(uid("tomb"))
    aid = uid("gone")
    a.write(aid, "x")
    a.delete(aid)
    err = fails(lambda: a.write(aid, "again", create_only=True), C.ALREADY_EXISTS, "ALREADY_EXISTS", "artifact_id")
    assert "deleted" in err.message                            # it says why the id is taken
    fails(lambda: a.write(aid, "again"), C.NOT_FOUND, "DELETED", "artifact_id")   # a plain write: DELETED
    tomb = a.get_metadata(aid)
    assert tomb["deleted"] and tomb["version"] == 2


def test_list_artifacts_refuses_cursors_it_did_not_issue_and_negative_page_sizes(world):
    a = world.agent(uid("cur"))
    tag = uid("t")
    ids = sorted(a.write(f"{tag}-{i}", str(i), metadata={"tag": tag}).artifact.id for i in range(5))
    fails(lambda: a.list_artifacts(page_size=-1), C.INVALID_ARGUMENT, "INVALID_ARGS", "page_size")
    for made_up in (ids[1], "zzz", "not base64 !", base64.urlsafe_b64encode(b"x" * 20).decode(), "A" * 300):
        fails(lambda: a.list_artifacts(cursor=made_up), C.INVALID_ARGUMENT, "INVALID_ARGS", "cursor")
        fails(lambda: a.invoke("genesis_store", "list", cursor=made_up), C.INVALID_ARGUMENT, "INVALID_ARGS")
    first = a.list_artifacts(metadata_equals={"tag": tag}, page_size=2)
    assert [x.id for x in first.artifacts] == ids[:2] and first.next_cursor not in ("", ids[1])
    # A tampered cursor (one character changed) is refused; the issued one works, also in genesis_store.
    c = first.next_cursor
    forged = c[:-1] + ("A" if c[-1] != "A" else "B")
    fails(lambda: a.list_artifacts(metadata_equals={"tag": tag}, cursor=forged), C.INVALID_ARGUMENT,
          "INVALID_ARGS", "cursor")
    assert [x.id for x in a.list_artifacts(metadata_equals={"tag": tag}, page_size=2, cursor=c).artifacts] \
        == ids[2:4]
    page = a.invoke("genesis_store", "list", metadata={"tag": tag}, limit=2, cursor=c)
    assert [x["id"] for x in page["artifacts"]] == ids[2:4]
    rest = a.invoke("genesis_store", "list", metadata={"tag": tag}, limit=2, cursor=page["next_cursor"])
    assert [x["id"] for x in rest["artifacts"]] == ids[4:] and rest["next_cursor"] == ""
    # page_size 0 means the default (100).
    assert [x.id for x in a.list_artifacts(metadata_equals={"tag": tag}, page_size=0).artifacts] == ids


def test_discovery_shows_only_the_controller_of_state(world):
    owner, outsider = world.agent(uid("own")), world.agent(uid("out"))
    tag = uid("vault")
    aid = uid("vault")
    owner.write(aid, "the content", access_contract_id="genesis_private", metadata={"tag": tag},
                state={"secret": "s3cr3t-word", "n": 1})
    fails(lambda: outsider.read(aid), C.PERMISSION_DENIED, "ACCESS_DENIED")
    listed = outsider.list_artifacts(metadata_equals={"tag": tag}).artifacts
    assert len(listed) == 1 and listed[0].content == ""
    assert dict(listed[0].state) == {"controller": owner.agent_id}
    assert dict(listed[0].metadata) == {"tag": tag}            # metadata is public, by definition
    meta = outsider.get_metadata(aid)
    assert meta["state"] == {"controller": owner.agent_id} and meta["content"] == ""
    assert outsider.invoke("genesis_store", "list", metadata={"tag": tag})["artifacts"][0]["state"] \
        == {"controller": owner.agent_id}
    assert outsider.invoke("genesis_store", "search", query="s3cr3t-word")["artifacts"] == []
    # Whoever may read it sees all of it.
    assert dict(owner.read(aid).state) == {"controller": owner.agent_id, "secret": "s3cr3t-word", "n": 1}
