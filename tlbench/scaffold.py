"""``tlbench new-plugin NAME``: write a plugin package that installs and passes its tests as is.

The package (``tlbench-NAME/``) registers one real component of each kind: a tiny timm model,
scikit-learn's digits and a nearest-centroid strategy, so an author starts from working code and
edits it, instead of from an empty skeleton. The files come from ``tlbench/templates/plugin``.
"""

from __future__ import annotations

import re
from pathlib import Path

from tlbench import __version__
from tlbench.errors import UserError

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
MAX_NAME_LENGTH = 40
TEMPLATES = Path(__file__).parent / "templates" / "plugin"


def check_plugin_name(name: str) -> None:
    """Raise ``UserError`` unless ``name`` makes a valid distribution, module and component name."""
    if name.startswith("tlbench-") or name == "tlbench":
        raise UserError(
            f"plugin name {name!r}: leave out the 'tlbench-' prefix; the package will be called tlbench-<name>"
        )
    if not NAME_PATTERN.match(name) or len(name) > MAX_NAME_LENGTH:
        raise UserError(
            f"plugin name {name!r}: use lowercase letters, digits and single hyphens, starting with a letter"
            f" (at most {MAX_NAME_LENGTH} characters), e.g. 'my-models'"
        )


def module_name(name: str) -> str:
    return "tlbench_" + name.replace("-", "_")


def create_plugin(name: str, directory: Path) -> Path:
    """Write ``directory/tlbench-<name>/`` and return its path.

    Refuses a bad name or an existing target directory with ``UserError`` (nothing is written).
    """
    check_plugin_name(name)
    target = Path(directory) / f"tlbench-{name}"
    if target.exists():
        raise UserError(f"{target} already exists; choose another name or --dir")
    replacements = {
        "__NAME__": name,
        "__MODULE__": module_name(name),
        "__TLBENCH_MINOR__": ".".join(__version__.split(".")[:2]),
    }
    files = _rendered_files(replacements)
    for relative, text in files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return target


def _rendered_files(replacements: dict[str, str]) -> dict[Path, str]:
    """Output path -> text; the template folder ``package/`` becomes the module's directory."""
    rendered = {}
    for template in sorted(TEMPLATES.rglob("*.tmpl")):
        parts = list(template.relative_to(TEMPLATES).parts)
        if parts[0] == "package":
            parts[0] = replacements["__MODULE__"]
        parts[-1] = parts[-1].removesuffix(".tmpl")
        text = template.read_text()
        for token, value in replacements.items():
            text = text.replace(token, value)
        rendered[Path(*parts)] = text
    return rendered
