"""Stack Exchange HTML to plain text: paragraphs, lists, code blocks and LaTeX kept as written.

Used by the ``stackexchange`` source (:mod:`sciexplain.sources`) and the human pair builder
(:mod:`sciexplain.human_pairs`); script-like content raises :class:`UnsafeHTML`.
"""
from __future__ import annotations

import re
from html.parser import HTMLParser


class UnsafeHTML(ValueError):
    pass


class _HTMLToText(HTMLParser):
    """Stack Exchange HTML -> plain text that keeps paragraphs, lists, code blocks and LaTeX as written."""

    BLOCK = {"p", "div", "blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "table", "tr", "hr"}
    FORBIDDEN = {"script", "style", "iframe", "object", "embed"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.lists: list[list] = []  # stack of [kind, counter]
        self.pre = 0
        self.code_inline = 0

    def _nl(self, n: int = 2) -> None:
        """End the text so far with at least ``n`` newlines (none at the very start). Looks only at the
        trailing whitespace chunks, so a body with many block tags converts in linear time."""
        have = 0
        for chunk in reversed(self.out):
            body = chunk.rstrip(" ")
            if body.strip("\n"):  # this chunk has text: count its trailing newlines and stop
                have += len(body) - len(body.rstrip("\n"))
                break
            have += body.count("\n")
        else:
            return  # nothing but whitespace so far
        if have < n:
            self.out.append("\n" * (n - have))

    def handle_starttag(self, tag, attrs):
        if tag in self.FORBIDDEN:
            raise UnsafeHTML(f"<{tag}> element")
        for name, value in attrs:
            if name.lower().startswith("on") or (value and value.strip().lower().startswith("javascript:")):
                raise UnsafeHTML(f"<{tag} {name}=...> attribute")
        if tag in self.BLOCK:
            self._nl(2)
        elif tag == "br":
            self.out.append("\n")
        elif tag in ("ul", "ol"):
            self._nl(2 if not self.lists else 1)
            self.lists.append([tag, 0])
        elif tag == "li":
            self._nl(1)
            depth = max(len(self.lists) - 1, 0)
            if self.lists and self.lists[-1][0] == "ol":
                self.lists[-1][1] += 1
                self.out.append("  " * depth + f"{self.lists[-1][1]}. ")
            else:
                self.out.append("  " * depth + "- ")
        elif tag == "pre":
            self._nl(2)
            self.out.append("```\n")
            self.pre += 1
        elif tag == "code" and not self.pre:
            self.out.append("`")
            self.code_inline += 1
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt:
                self.out.append(f"[image: {alt}]")

    def handle_endtag(self, tag):
        if tag in self.BLOCK:
            self._nl(2)
        elif tag in ("ul", "ol"):
            if self.lists:
                self.lists.pop()
            self._nl(2 if not self.lists else 1)
        elif tag == "pre":
            if self.pre:
                self.pre -= 1
                if not "".join(self.out).endswith("\n"):
                    self.out.append("\n")
                self.out.append("```")
                self._nl(2)
        elif tag == "code" and self.code_inline:
            self.out.append("`")
            self.code_inline -= 1

    def handle_data(self, data):
        if self.pre:
            self.out.append(data)
        else:
            data = re.sub(r"\s+", " ", data)
            if not self.out or self.out[-1].endswith("\n") or self.out[-1].endswith(("- ", ". ")):
                data = data.lstrip()
            if data:
                self.out.append(data)


def html_to_text(body: str) -> str:
    """Convert (already XML-unescaped) HTML to text. Raises :class:`UnsafeHTML` on script-like content."""
    parser = _HTMLToText()
    parser.feed(body)
    parser.close()
    text = "".join(parser.out)
    lines = [ln.rstrip() for ln in text.split("\n")]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def clean_text(text: str) -> str:
    """Collapse runs of spaces and blank lines; keep paragraph breaks."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t\u00a0]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()
