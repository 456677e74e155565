"""Articles become passages a voice agent can read out: plain words, under their heading, and
never longer than MAX_PASSAGE_CHARS."""

from __future__ import annotations

import pytest

from voiceagents.registry.passages import MAX_PASSAGE_CHARS, Passage, split_passages

pytestmark = pytest.mark.unit

MARKDOWN = """# Returns

You can return **unworn** shoes within [30 days](https://acme.test/returns).
![A shoe box](box.png)

```
POST /returns
```

## Refunds

- Refunds go back to the card
- They take `5` business days

| Size | Price |
|------|-------|
| S    | 10 euros |
"""


def test_markdown_is_reduced_to_its_words_under_each_heading() -> None:
    assert split_passages(MARKDOWN, "markdown") == [
        Passage(
            heading="Returns",
            text="You can return unworn shoes within 30 days. A shoe box.",
        ),
        Passage(
            heading="Refunds",
            text="Refunds go back to the card. They take 5 business days. Size, Price. "
            "S, 10 euros.",
        ),
    ]


def test_plain_text_is_cut_at_paragraphs_and_sentences_within_the_limit() -> None:
    sentence = "The warranty covers the motor and the jug for two whole years. "
    long_paragraph = sentence * 20
    body = f"Short first paragraph\n\n{long_paragraph}\n\n{'x' * (MAX_PASSAGE_CHARS * 2)}"

    passages = split_passages(body, "text")

    assert all(len(p.text) <= MAX_PASSAGE_CHARS for p in passages)
    assert passages[0].text.startswith("Short first paragraph. The warranty covers")
    # Whole sentences: no passage of the long paragraph ends mid-sentence.
    assert all(p.text.endswith(".") for p in passages[:-1])
    assert sum(p.text.count("warranty") for p in passages) == 20
    # A "word" longer than a passage (a pasted token, not speech) is cut to the limit.
    assert passages[-1].text == "x" * MAX_PASSAGE_CHARS
    assert {p.heading for p in passages} == {""}


def test_an_article_without_readable_words_has_no_passages() -> None:
    assert split_passages("```\nrm -rf /\n```\n", "markdown") == []
    assert split_passages(" \n\n \n", "text") == []
