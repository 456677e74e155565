"""Knowledge-base articles over REST: an organization's admins add, list, change and delete
them; nobody sees another organization's; oversized or empty input names the field."""

from __future__ import annotations

from typing import Any

import pytest

from voiceagents.registry.knowledge import MAX_BODY_CHARS

from .conftest import RunningRegistry

pytestmark = pytest.mark.integration

ARTICLES = "/api/v1/knowledge/articles"

RETURNS_MD = """# Returns

You can return **unworn shoes** within [30 days](https://acme.test/returns) of delivery.

## Refunds

- Refunds go back to the card you paid with
- They take five business days
"""


async def create(
    registry: RunningRegistry, org_id: str, key: str | None = None, **fields: Any
) -> dict[str, Any]:
    body = {"organization_id": org_id, "title": "Returns", "body": RETURNS_MD, **fields}
    response = await registry.request("POST", ARTICLES, key=key, json=body)
    assert response.status_code == 201, response.text
    article: dict[str, Any] = response.json()
    return article


async def test_an_org_admin_adds_reads_changes_and_deletes_an_article(
    registry: RunningRegistry,
) -> None:
    org = await registry.org()
    key = await registry.org_key(org)

    created = await create(registry, org, key, collection="shoes")
    assert created["format"] == "markdown"
    assert created["collection"] == "shoes"
    # One passage per section: the Markdown is cut under its headings.
    assert created["passage_count"] == 2
    assert created["version"] == 1

    read = await registry.request("GET", f"{ARTICLES}/{created['id']}", key=key)
    assert read.status_code == 200
    assert read.json()["body"] == RETURNS_MD
    assert read.headers["etag"] == '"1"'

    changed = await registry.request(
        "PUT",
        f"{ARTICLES}/{created['id']}",
        key=key,
        json={"body": "Plain words.\n\nTwo paragraphs.", "format": "text", "version": 1},
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["version"], changed.json()["passage_count"]) == (2, 1)
    assert changed.json()["title"] == "Returns"

    stale = await registry.request(
        "PUT", f"{ARTICLES}/{created['id']}", key=key, json={"title": "Old", "version": 1}
    )
    assert stale.status_code == 409
    assert stale.json()["field"] == "version"
    stale_if_match = await registry.request(
        "DELETE", f"{ARTICLES}/{created['id']}", key=key, headers={"If-Match": '"1"'}
    )
    assert stale_if_match.status_code == 412

    deleted = await registry.request("DELETE", f"{ARTICLES}/{created['id']}", key=key)
    assert deleted.status_code == 204
    gone = await registry.request("GET", f"{ARTICLES}/{created['id']}", key=key)
    assert gone.status_code == 404


async def test_another_organizations_articles_do_not_exist_for_an_org_admin(
    registry: RunningRegistry,
) -> None:
    mine, theirs = await registry.org(), await registry.org()
    my_key = await registry.org_key(mine)
    their_article = await create(registry, theirs)

    for method, json in (("GET", None), ("PUT", {"title": "Mine now"}), ("DELETE", None)):
        response = await registry.request(
            method, f"{ARTICLES}/{their_article['id']}", key=my_key, json=json
        )
        assert response.status_code == 404, (method, response.text)
    listed = await registry.request("GET", f"{ARTICLES}/organization/{theirs}", key=my_key)
    assert listed.status_code == 404
    refused = await registry.request(
        "POST",
        ARTICLES,
        key=my_key,
        json={"organization_id": theirs, "title": "Planted", "body": "Call 555."},
    )
    assert refused.status_code == 404
    assert refused.json()["field"] == "organization_id"
    still = await registry.request("GET", f"{ARTICLES}/{their_article['id']}")
    assert still.json()["title"] == "Returns"


async def test_articles_are_listed_in_pages_without_bodies(registry: RunningRegistry) -> None:
    org = await registry.org()
    ids = [
        (await create(registry, org, title=f"Article {i}", collection=collection))["id"]
        for i, collection in enumerate(["billing", "shoes", "billing"])
    ]

    first = (await registry.request("GET", f"{ARTICLES}/organization/{org}?limit=2")).json()
    second = (
        await registry.request(
            "GET", f"{ARTICLES}/organization/{org}?limit=2&cursor={first['next_cursor']}"
        )
    ).json()
    billing = (
        await registry.request("GET", f"{ARTICLES}/organization/{org}?collection=billing")
    ).json()

    assert [a["id"] for a in first["items"] + second["items"]] == ids
    assert second["next_cursor"] is None
    assert "body" not in first["items"][0]
    assert [a["id"] for a in billing["items"]] == [ids[0], ids[2]]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"body": "x" * (MAX_BODY_CHARS + 1)}, "body"),
        ({"body": ""}, "body"),
        ({"title": "t" * 201}, "title"),
        ({"collection": "Billing Team"}, "collection"),
        ({"format": "html"}, "format"),
        # Nothing a listener could hear: the article would never be found.
        ({"body": "```\nrm -rf /\n```"}, "body"),
    ],
)
async def test_bad_articles_get_a_422_naming_the_field(
    registry: RunningRegistry, fields: dict[str, Any], field: str
) -> None:
    org = await registry.org()
    body = {"organization_id": org, "title": "Returns", "body": "Some text.", **fields}

    response = await registry.request("POST", ARTICLES, json=body)

    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["field"] == field


async def test_an_update_over_the_size_limit_changes_nothing(registry: RunningRegistry) -> None:
    org = await registry.org()
    article = await create(registry, org)

    response = await registry.request(
        "PUT", f"{ARTICLES}/{article['id']}", json={"body": "y" * (MAX_BODY_CHARS + 1)}
    )

    assert response.status_code == 422
    assert response.json()["field"] == "body"
    unchanged = await registry.request("GET", f"{ARTICLES}/{article['id']}")
    assert unchanged.json()["body"] == RETURNS_MD
