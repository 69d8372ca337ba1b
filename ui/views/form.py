"""A view's inputs as one dataclass, a form: its fields, in order, are the Gradio components the view sends, so a
handler takes a form, never a row of positional values. The order is also the one a script's positional inputs
follow (gradio_client's param_0, param_1, ...)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import gradio as gr


def form_inputs(form: type[Any], components: Mapping[str, gr.components.Component]) -> list[gr.components.Component]:
    """The components for the fields of `form`, in its field order; a field without one (or one without a field) is
    a bug of the view, caught when the app is built."""
    names = [f.name for f in dataclasses.fields(form)]
    if set(names) != set(components):
        raise TypeError(
            f"{form.__name__}: no component for {sorted(set(names) - set(components))}, "
            f"no field for {sorted(set(components) - set(names))}"
        )
    return [components[name] for name in names]
