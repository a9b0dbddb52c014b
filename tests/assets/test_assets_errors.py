"""Render errors carry the material ID and reason, also after crossing a process boundary."""

from __future__ import annotations

import pickle

import pytest

from render.errors import MaterialError, RenderError


@pytest.mark.parametrize("cls", [MaterialError, RenderError])
def test_errors_keep_fields_through_pickle(cls):
    err = cls("oak-017", "map 'normal': file /x/n.png does not exist")
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, RuntimeError) and type(back) is cls
    assert back.material_id == "oak-017" and back.reason == err.reason
    assert "oak-017" in str(back) and "n.png" in str(back)
