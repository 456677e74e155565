"""Articles cut into passages: short plain-text pieces that a voice agent can read out.

Markdown is parsed (markdown-it, CommonMark + tables) and reduced to what a listener can use:
the words of paragraphs, list items and table rows, without markup, links' targets or code
blocks. Each passage stays under its section heading and holds whole paragraphs, or whole
sentences of a long one, up to `MAX_PASSAGE_CHARS` (about 20 seconds of speech).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from markdown_it import MarkdownIt
from markdown_it.token import Token

ArticleFormat = Literal["text", "markdown"]

MAX_PASSAGE_CHARS = 400

_markdown = MarkdownIt("commonmark").enable("table")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class Passage:
    # The heading of the section it belongs to ("" before the first heading).
    heading: str
    text: str


@dataclass(frozen=True)
class _Block:
    heading: str
    text: str


def split_passages(body: str, article_format: ArticleFormat) -> list[Passage]:
    blocks = _markdown_blocks(body) if article_format == "markdown" else _text_blocks(body)
    passages: list[Passage] = []
    for block in blocks:
        for piece in _pieces(block.text):
            last = passages[-1] if passages else None
            if (
                last is not None
                and last.heading == block.heading
                and len(last.text) + 1 + len(piece) <= MAX_PASSAGE_CHARS
            ):
                passages[-1] = Passage(heading=last.heading, text=f"{last.text} {piece}")
            else:
                passages.append(Passage(heading=block.heading, text=piece))
    return passages


def _clean(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def _sentence(text: str) -> str:
    """Text that reads as a sentence when joined to the next one (list items, table rows)."""
    return text if text[-1:] in ".!?:;" else text + "."


def _text_blocks(body: str) -> list[_Block]:
    return [
        _Block(heading="", text=_sentence(text))
        for paragraph in re.split(r"\n\s*\n", body)
        if (text := _clean(paragraph))
    ]


def _inline_text(token: Token) -> str:
    """The words of an inline token: text and code spans; images by their alt text."""
    words: list[str] = []
    for child in token.children or []:
        if child.type in ("text", "code_inline"):
            words.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            words.append(" ")
        elif child.type == "image":
            words.append(_inline_text(child))
    return _clean("".join(words))


def _markdown_blocks(body: str) -> list[_Block]:
    blocks: list[_Block] = []
    heading = ""
    in_heading = False
    row: list[str] | None = None
    for token in _markdown.parse(body):
        if token.type == "heading_open":
            in_heading = True
        elif token.type == "heading_close":
            in_heading = False
        elif token.type == "tr_open":
            row = []
        elif token.type == "tr_close" and row is not None:
            if any(row):
                blocks.append(_Block(heading=heading, text=_sentence(", ".join(row))))
            row = None
        elif token.type == "inline":
            text = _inline_text(token)
            if in_heading:
                heading = text
            elif row is not None:
                row.append(text)
            elif text:
                blocks.append(_Block(heading=heading, text=_sentence(text)))
    return blocks


def _pieces(text: str) -> list[str]:
    """A block as pieces of at most MAX_PASSAGE_CHARS: whole sentences, words if need be."""
    if len(text) <= MAX_PASSAGE_CHARS:
        return [text]
    pieces: list[str] = []
    current = ""
    for sentence in _SENTENCE_END.split(text):
        for part in _words_within_limit(sentence):
            if current and len(current) + 1 + len(part) <= MAX_PASSAGE_CHARS:
                current = f"{current} {part}"
            else:
                if current:
                    pieces.append(current)
                current = part
    if current:
        pieces.append(current)
    return pieces


def _words_within_limit(sentence: str) -> list[str]:
    if len(sentence) <= MAX_PASSAGE_CHARS:
        return [sentence]
    parts: list[str] = []
    current = ""
    for word in sentence.split(" "):
        word = word[:MAX_PASSAGE_CHARS]
        if current and len(current) + 1 + len(word) > MAX_PASSAGE_CHARS:
            parts.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        parts.append(current)
    return parts
