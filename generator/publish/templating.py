"""Templates and text: values from manifests, records and guests made literal Markdown (never HTML or a
Hugo shortcode), content files rendered in a sandbox with errors that name the file and line, a
post's summary, and Markdown turned into safe HTML for previews as Hugo would render it."""
from __future__ import annotations

import re
import traceback
from pathlib import Path

from ..errors import UserError
from ..units import mib_label
from . import claims


def templates_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "templates"



# --- Jinja -------------------------------------------------------------------------------------------
# Values from manifests, records and guests are text, never Markdown, HTML or Hugo: every {{ value }} is
# escaped for Markdown (the characters that make links, code spans, table cells, emphasis and escapes),
# for HTML (entities) and for Hugo, whose shortcodes ({{< x >}}, {{% x %}}) are found in the raw page
# before Markdown is parsed, in text and code spans alike. Templates and macros are trusted; what they
# output is not escaped again.
#
# In text a '{' is escaped ('\{', which Markdown shows as '{') when it could make or complete a
# shortcode opener: when it starts the value or follows another '{', and ends the value or precedes
# '{', '%' or '<'. So no '{{<' or '{{%' is left in a value, nor made where two values meet; a '{' in
# ordinary text ('a {x}', 'a {{ y }}') is left as it is. '_' is escaped only where it could start or end
# emphasis (not inside a word, as in 'virtio_balloon').
_MD_TEXT = re.compile(r"""[\\`\[\]|*~&<>"]|(?<![^\W_])_|_(?![^\W_])|(?:^|(?<=\{))\{(?=[{%<]|$)""")
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}


# Text from others must not become structure either: control and bidirectional formatting characters are
# dropped (they reorder or hide what a reader sees); a value that starts like a block (a heading's '#', a
# list's '-', '+' or '1.', a setext or thematic line's '=' or '-') has that character escaped, since a value
# may start a line or a list item; and a '{' that opens a trailing '{…}' is escaped, which goldmark would
# otherwise read as attributes of a heading the value ends ('{style=… class=…}').
_INVISIBLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_BLOCK_START = re.compile(r"^(\s*)(#|-|\+|=)")
_ATTRIBUTES = re.compile(r"\{(?=[^{}]*\}\s*$)")
# Nor a link: goldmark's linkify (on by default in Hugo) turns 'https://…', 'www.…' and 'a@b.org' in text
# into links. A ':' before '//' and every '@' become character references, and the '.' after 'www' is
# escaped: each renders as the character it was, and linkify, which reads the source, sees no link.
_LINKISH = re.compile(r"(?i):(?=//)|@|(?<![^\W_])www\.")


def md_text(value, name: bool = True) -> "Markup":
    """A value as literal Markdown text: Markdown's specials backslash-escaped, HTML's as entities, no Hugo
    shortcode opener left, and no block structure or heading attributes made of it (see above)."""
    from markupsafe import Markup

    if isinstance(value, Markup):
        return value
    text = _INVISIBLE.sub("", " ".join(str(value).splitlines()))
    text = _MD_TEXT.sub(lambda m: _ENTITIES.get(m.group(0)) or "\\" + m.group(0), text)
    text = _ATTRIBUTES.sub(lambda m: "\\{", text)
    text = _LINKISH.sub(lambda m: {":": "&#58;", "@": "&#64;"}.get(m.group(0)) or m.group(0)[:3] + "\\.", text)
    numbered = re.match(r"^(\s*[0-9]{1,9})([.)])(\s|$)", text)
    if numbered:
        out = Markup(numbered.group(1) + "\\" + text[numbered.end(1):])
    else:
        out = Markup(_BLOCK_START.sub(lambda m: m.group(1) + "\\" + m.group(2), text, count=1))
    if name:
        claims.note_name(out)  # a label or a version from a manifest or a record: its digits are no claim
    return out


# In a code span nothing can be escaped (a backslash or an entity would show as typed): a shortcode
# opener is broken by a zero-width space between its braces, and Hugo's summary divider by one after
# its '<'. Both render as the text they were, and Hugo finds neither.
_CODE_HUGO = re.compile(r"\{\{+(?=[<%])|<(?=!--more-->)")
ZERO_WIDTH_SPACE = "\u200b"


def md_code(value) -> "Markup":
    """A value as a Markdown code span, fenced by more backticks than it contains (no escaping applies
    inside a code span, so none is done; Hugo's openers are broken, see above)."""
    from markupsafe import Markup

    text = " ".join(str(value).splitlines())
    text = _CODE_HUGO.sub(lambda m: ZERO_WIDTH_SPACE.join(m.group(0)) + (ZERO_WIDTH_SPACE if m.group(0) == "<" else ""),
                          text)
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return Markup(f"{fence}{pad}{text}{pad}{fence}")


def _truncate(env, value, *args, **kwargs):
    """Jinja's truncate, for text that is not yet escaped: cutting escaped text could cut an escape
    (a '\\{' or '&lt;') in half, so truncate before md_escape or code, never after."""
    import jinja2.filters
    from markupsafe import Markup

    if isinstance(value, Markup):
        raise ValueError("truncate the value before escaping it (value | truncate(n) | code), not after")
    return jinja2.filters.do_truncate(env, value, *args, **kwargs)


def _finalize(value):
    from markupsafe import Markup

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # printed bare: a claim with its query; a number without one is listed as unclaimed (tests fail on it)
        claims.note(str(value), value)
        return value
    if value is None or isinstance(value, Markup):
        return value
    return md_text(value)


def _num(value, digits=0):
    """A number as the post prints it (thousands separated), noted with its query."""
    if value is None:
        return "n/a"
    return md_text(claims.note(f"{value:,.{digits}f}", value), name=False)


def _mib(value):
    """A size as a label (1 GiB, 1,024 MiB): a measured one with its query, a swept one as a size."""
    text = mib_label(value)
    claims.note(text, value if isinstance(value, claims.Claimed) else claims.size(value))
    return md_text(text, name=False)


def jinja_env(content_dir: Path):
    """A sandboxed environment: content files may come from someone else and get no Python access."""
    import jinja2
    from jinja2.sandbox import SandboxedEnvironment

    class ClaimsSandbox(SandboxedEnvironment):
        """The sandbox, and a claim's question is not the content's to read or rewrite."""

        def is_safe_attribute(self, obj, attr, value):
            if attr == "query" and isinstance(obj, claims.Claimed):
                return False
            return super().is_safe_attribute(obj, attr, value)

    env = ClaimsSandbox(
        loader=jinja2.ChoiceLoader(
            ([] if Path(content_dir).resolve() == templates_dir() else [content_loader(content_dir)])
            + [jinja2.FileSystemLoader(str(templates_dir()))]),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=True, finalize=_finalize,
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.do"])
    env.filters["mib"] = _mib
    env.filters["num"] = _num
    env.globals["fact"] = claims.fact
    env.globals["setting"] = claims.setting
    env.filters["md_escape"] = md_text
    env.filters["code"] = md_code
    env.filters["truncate"] = jinja2.pass_environment(_truncate)
    return env


def _template_error(e: Exception, fallback: str) -> UserError:
    import jinja2

    if isinstance(e, jinja2.TemplateSyntaxError):
        return UserError(f"{e.filename or fallback}:{e.lineno}: template error: {e.message}")
    where = fallback
    for frame in reversed(traceback.extract_tb(e.__traceback__)):
        if frame.filename.endswith((".md", ".j2", ".html")):
            where = f"{frame.filename}:{frame.lineno}"
            break
    message = getattr(e, "message", None) or str(e)
    return UserError(f"{where}: template error: {type(e).__name__}: {message}")


# A content file may come from someone else: what it writes goes through md_text, and nothing may
# bypass that. {% raw %} copies text as it is and these filters return markup that md_text leaves alone
# (escape returns HTML-escaped markup, in which a Hugo shortcode survives): refused, with the line.
UNSAFE_FILTERS = ("safe", "escape", "e", "forceescape", "tojson", "urlize", "xmlattr")
_SHORTCODE = re.compile(r"\{\{\s*[<%]")


def _unsafe_use(env, source: str, name: str, filename: str | None) -> tuple[int, str] | None:
    """(line, what) of the first {% raw %} or unsafe filter in a template's source, else None."""
    tokens = [t for t in env.lex(source, name, filename) if t[1] != "whitespace"]
    for i, (line, kind, value) in enumerate(tokens):
        if kind == "raw_begin":
            return line, "{% raw %}: its text would reach the page unescaped; write the text itself"
        if kind == "name" and value in UNSAFE_FILTERS and i and tokens[i - 1][1:] == ("operator", "|"):
            return line, f"the filter '{value}': it would put markup on the page unescaped"
    return None


def content_loader(content_dir: Path):
    """A loader of content files (someone else's input) that refuses, with the file and line, any that
    uses {% raw %} or a filter whose output md_text would not escape; included and imported content
    files too."""
    import jinja2

    class Checked(jinja2.FileSystemLoader):
        def get_source(self, environment, template):
            source, filename, uptodate = super().get_source(environment, template)
            found = _unsafe_use(environment, source, template, filename)
            if found:
                raise jinja2.TemplateSyntaxError(f"a content file may not use {found[1]}", found[0], template,
                                                 filename)
            return source, filename, uptodate

    return Checked(str(content_dir))


def render_with_summary(env, name: str, fallback: str, **context) -> tuple[str, str]:
    """The page's body, and its `summary` (what a content file sets with {% set summary %}…{% endset %}:
    its answer in a few sentences, shown first and carried into the front matter's description).
    Rendered as usual first (errors name the file and line), then as a module for the summary. The
    content file is checked first, and its output once more: no Hugo shortcode may come out of it."""
    body = render(env, name, fallback, **context)
    found = _SHORTCODE.search(body)
    if found:
        line = body.count("\n", 0, found.start()) + 1
        raise UserError(f"{fallback}: its output puts a Hugo shortcode on the page (line {line} of the rendered "
                        "body); a content file may not")
    template = env.get_template(name)
    if "summary" not in env.loader.get_source(env, name)[0]:
        return body, ""
    try:
        with claims.paused():  # the second rendering, for the summary alone: its numbers are already noted
            summary = getattr(template.make_module(context), "summary", "")
    except Exception as e:  # noqa: BLE001 - it rendered once already; say where if not
        raise _template_error(e, fallback) from None
    return body, plain_summary(str(summary)) if summary else ""


_MD_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")


def plain_summary(markdown: str) -> str:
    """A summary written in Markdown, as the plain text of a description (listings, link previews)."""
    text = _MD_LINK.sub(r"\1", markdown)
    text = re.sub(r"(\*\*|__|`)", "", text)
    text = re.sub(r"\\([\\`*_{}\[\]()#+\-.!|<>&\"~])", r"\1", text)
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&amp;", "&")
    return " ".join(text.split())


def render(env, name: str, fallback: str, **context) -> str:
    import jinja2

    try:
        return env.get_template(name).render(**context)
    except jinja2.TemplateNotFound as e:
        raise UserError(f"{fallback}: template {e.name!r} not found in {templates_dir()}") from None
    except Exception as e:  # noqa: BLE001 - every template failure is reported with file and line
        raise _template_error(e, fallback) from None


# --- the preview: Markdown to HTML as Hugo renders it (raw HTML dropped, unsafe links removed) ---------
_SAFE_URL = re.compile(r"^(https?:|mailto:|#|/|\.{0,2}/|[A-Za-z0-9._~-]+(/|$|\.|#|\?))", re.I)


def markdown_to_safe_html(text: str) -> str:
    """HTML for the preview. Like Hugo's goldmark with unsafe off: raw HTML in the Markdown is shown
    as text (never run), and links or images whose URL is not http(s), mailto or relative are dropped."""
    import markdown
    from markdown.treeprocessors import Treeprocessor

    class DropUnsafeURLs(Treeprocessor):
        def run(self, root):
            for el in root.iter():
                for attr in ("href", "src"):
                    url = el.get(attr)
                    if url is not None and not _SAFE_URL.match(url.strip()):
                        el.set(attr, "")
                for attr in list(el.keys()):
                    if attr.lower().startswith("on"):
                        del el.attrib[attr]

    md = markdown.Markdown(extensions=["tables", "fenced_code"], output_format="html")
    md.preprocessors.deregister("html_block")
    md.inlinePatterns.deregister("html")
    md.treeprocessors.register(DropUnsafeURLs(md), "drop_unsafe_urls", 0)
    return md.convert(text)
