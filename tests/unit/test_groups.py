from hypothesis import given
from hypothesis import strategies as st

from fastfanout._ext.groups import GroupTable


def test_same_id_same_group_and_release_recycles():
    table = GroupTable()
    a = table.lookup(b"a")
    assert table.lookup(b"a") == a
    b = table.lookup(b"b")
    assert a != b and len(table) == 2
    table.forget(a)
    assert len(table) == 1
    assert table.lookup(b"b") == b
    assert table.lookup(b"c") == a  # recycled index


@given(st.lists(st.tuples(st.booleans(), st.binary(min_size=1, max_size=2)), max_size=400))
def test_matches_a_dict_model(operations):
    table = GroupTable()
    model: dict[bytes, int] = {}
    for add, key in operations:
        if add or key not in model:
            index = table.lookup(key)
            if key in model:
                assert model[key] == index
            assert index not in {v for k, v in model.items() if k != key}
            model[key] = index
        else:
            table.forget(model.pop(key))
        assert len(table) == len(model)
    for key, index in model.items():
        assert table.lookup(key) == index
