"""Message wording: Jinja2 templates under `handlers/templates/<channel>/`, compiled once.

File conventions (one place to reword a message):

* `whatsapp/<name>.txt`: the WhatsApp body.
* `email/<name>.txt`: first line is the subject, the rest the plain-text part;
  `email/<name>.html`: the HTML part (autoescaped; every value is escaped).
* `in_app/<name>.txt`: first line is the notification title, the rest its message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, Template
from jinja2.runtime import new_context

TEMPLATE_DIR = Path(__file__).with_name("templates")

_EXTENDS = re.compile(r'\A\s*\{%\s*extends\s+"([^"]+)"\s*%\}')
_BLOCK = re.compile(r"\{%\s*block\s+(\w+)\s*%\}(.*?)\{%\s*endblock\s*%\}", re.DOTALL)
_SELF_BLOCK = re.compile(r"\{\{\s*self\.(\w+)\(\)\s*\}\}")
#: With trim_blocks, the newline after a tag is not output: it goes with the tag.
_INCLUDE = re.compile(r'\{%\s*include\s+"([^"]+)"\s*%\}\n?')


@dataclass(frozen=True, slots=True)
class Rendered:
    """One rendered message: `subject` for email and in-app titles, `html` for email only."""

    text: str
    subject: str | None = None
    html: str | None = None


def aud(value: Decimal | int | float | str | None) -> str:
    """Amounts are Australian dollars with two decimals: `$1,234.50 AUD`."""
    amount = Decimal(str(value if value is not None else 0))
    return f"${amount:,.2f} AUD"


class InliningLoader(FileSystemLoader):
    """Serves each template with its layout (`{% extends %}`) and `{% include %}`s inlined.

    Jinja resolves both at every render (a template lookup and a new context each): a third of
    an HTML email's render time. Inlined, one message is one template. The files keep plain Jinja
    structure (blocks are not nested; names are string literals); tests/test_templates.py checks
    the output is exactly what Jinja's own loader gives. Error line numbers count the inlined text.
    """

    def get_source(self, environment: Environment, template: str) -> tuple[str, str | None, Any]:
        source, filename, uptodate = super().get_source(environment, template)
        return self._inline(environment, source), filename, uptodate

    def _inline(self, environment: Environment, source: str) -> str:
        extends = _EXTENDS.match(source)
        if extends:
            blocks = dict(_BLOCK.findall(source))
            layout = self._raw(environment, extends.group(1))
            blocks |= {name: blocks.get(name, default) for name, default in _BLOCK.findall(layout)}
            source = _BLOCK.sub(lambda m: f"{{% block {m[1]} %}}{blocks[m[1]]}{{% endblock %}}", layout)
            # `{{ self.title() }}` renders the block again through a reference object: the costliest
            # line of an email. Its body in place says the same (the newline after a tag is trimmed).
            source = _SELF_BLOCK.sub(lambda m: blocks[m[1]].removeprefix("\n"), source)
            return self._inline(environment, source)
        # An included file's last newline is not output (Jinja drops a template's trailing newline).
        return _INCLUDE.sub(
            lambda m: self._inline(environment, self._raw(environment, m[1])).removesuffix("\n"), source
        )

    def _raw(self, environment: Environment, template: str) -> str:
        return super().get_source(environment, template)[0]


class Templates:
    """The compiled templates, with the app's base URL available to all of them as `app_url`."""

    def __init__(self, app_url: str) -> None:
        self.app_url = app_url.rstrip("/")
        # Two environments rather than a per-name autoescape callback: Jinja would call the
        # callback on every render, and HTML-ness is known per file anyway.
        self._html = self._environment(autoescape=True)
        self._text = self._environment(autoescape=False)
        self._cache: dict[str, Template] = {}

    @staticmethod
    def _environment(*, autoescape: bool) -> Environment:
        env = Environment(
            loader=InliningLoader(TEMPLATE_DIR),
            autoescape=autoescape,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,
        )
        env.filters["aud"] = aud
        env.globals.clear()  # unused (renders share only their own values) and copied per render
        return env

    def _template(self, path: str) -> Template:
        template = self._cache.get(path)
        if template is None:
            env = self._html if path.endswith(".html") else self._text
            template = self._cache[path] = env.get_template(path)
        return template

    def render(self, channel: str, template: str, variables: Mapping[str, Any], /, **extra: Any) -> Rendered:
        """Render one message of `channel` from `template` with `variables` and `extra`."""
        values = {**variables, **extra, "app_url": self.app_url}
        text = self._render(f"{channel}/{template}.txt", values).strip()
        if channel == "whatsapp":
            return Rendered(text=text)
        subject, _, body = text.partition("\n")
        html = self._render(f"email/{template}.html", values) if channel == "email" else None
        return Rendered(text=body.strip(), subject=subject.strip(), html=html)

    def _render(self, path: str, values: dict[str, Any]) -> str:
        """`Template.render` without its per-call copy of the environment's globals into a new
        context (a third of the render time): the values are the whole context, shared as is,
        and the (empty) globals are not even looked at."""
        template = self._template(path)
        context = new_context(template.environment, template.name, template.blocks, values, shared=True)
        try:
            return "".join(template.root_render_func(context))
        except Exception:
            template.environment.handle_exception()
