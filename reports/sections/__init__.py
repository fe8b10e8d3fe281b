"""Report sections: one file each, registered with @register_section under the name a view's `kind:` uses.

Adding a table or a figure is a file in this folder (found here by its name, no import line to add) and its entry in a
view (`reports/views/*.yaml` or the user's own). Outside the package, a section registered before the report is
built (a user's module, a test) works the same way.
"""

import importlib
import pkgutil

from .base import NEEDS, SECTIONS, Context, SectionKind, register_section

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["NEEDS", "SECTIONS", "Context", "SectionKind", "register_section"]
