"""The scrub's per-block decision (jiva_engine/controller/scrub.py decide()) and run merging."""

from __future__ import annotations

from jiva_engine.controller.scrub import BAD, decide, merge_blocks


def test_all_good_and_equal_needs_nothing():
    v = decide({"a": 7, "b": 7, "c": 7})
    assert v.repairs == [] and not v.mismatched and v.unrepaired is None


def test_bad_copies_are_rewritten_from_the_first_good_member():
    v = decide({"a": BAD, "b": 7, "c": 7})
    assert v.repairs == [("a", "b")] and not v.mismatched and v.unrepaired is None
    v = decide({"a": BAD, "b": BAD, "c": 7})
    assert v.repairs == [("a", "c"), ("b", "c")] and v.unrepaired is None


def test_a_single_good_copy_is_enough_when_no_good_copy_disagrees():
    v = decide({"a": BAD, "b": 5})
    assert v.repairs == [("a", "b")] and v.unrepaired is None


def test_no_good_copy_is_unrepaired():
    for copies in ({"a": BAD}, {"a": BAD, "b": BAD}, {"a": BAD, "b": BAD, "c": BAD}):
        v = decide(copies)
        assert v.repairs == [] and not v.mismatched
        assert v.unrepaired and "no good copy" in v.unrepaired


def test_disagreeing_good_copies_majority_wins():
    v = decide({"a": 1, "b": 2, "c": 2})
    assert v.mismatched and v.unrepaired is None and v.repairs == [("a", "b")]
    # a bad copy is rewritten from the majority too
    v = decide({"a": 1, "b": 2, "c": 2, "d": BAD, "e": 2})
    assert v.mismatched and v.repairs == [("a", "b"), ("d", "b")]


def test_disagreeing_good_copies_without_strict_majority_are_unrepaired():
    for copies in (
        {"a": 1, "b": 2},  # one each of two
        {"a": 1, "b": 2, "c": BAD},  # 1 of 3 is no majority (the bad copy counts as a member)
        {"a": 1, "b": 1, "c": 2, "d": 2},  # a tie
        {"a": 1, "b": 1, "c": 2, "d": BAD},  # 2 of 4 is not a strict majority
        {"a": 1, "b": 2, "c": 3},
    ):
        v = decide(copies)
        assert v.mismatched and v.repairs == [], copies
        assert v.unrepaired and "no majority" in v.unrepaired


def test_single_member():
    assert decide({"a": 3}).repairs == [] and decide({"a": 3}).unrepaired is None
    assert decide({"a": BAD}).unrepaired


def test_merge_blocks_joins_adjacent_blocks_and_keeps_a_short_last_one():
    def ln_of(o):
        return 512 if o == 12288 else 4096

    assert merge_blocks([0, 4096, 12288], ln_of) == [(0, 8192), (12288, 512)]
    assert merge_blocks([], ln_of) == []
    assert merge_blocks([4096, 8192, 12288], ln_of) == [(4096, 8704)]
