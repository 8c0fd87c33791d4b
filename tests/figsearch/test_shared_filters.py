"""figsearch.shared_filters: the data dir's list of recently applied filters."""

from __future__ import annotations

import json
import os

from figsearch.shared_filters import FILE, KEEP, read_filters, share_filters
from figsearch.store import FigureFilter


def test_filters_round_trip_with_every_kind_of_field(tmp_path):
    path = tmp_path / FILE
    filters = [FigureFilter(year_from=0, year_to=2020), FigureFilter(commercial_only=True),
               FigureFilter(journal="PLoS One", figure_type="microscopy"),
               FigureFilter(first_versions=("v1", "v2"), license_class="cc-by")]
    assert share_filters(path, filters) == filters
    assert read_filters(path) == filters
    assert not [p for p in tmp_path.iterdir() if p.name != FILE]  # no temporary file left


def test_the_newest_are_kept_once_and_other_workers_filters_stay(tmp_path):
    path = tmp_path / FILE
    other = [FigureFilter(year_from=2000 + i) for i in range(3)]
    share_filters(path, other)  # another worker's
    mine = [FigureFilter(), FigureFilter(journal="Cell"), other[0]]  # empty: nothing to share
    got = share_filters(path, mine)
    assert got == [other[1], other[2], FigureFilter(journal="Cell"), other[0]]
    many = [FigureFilter(year_to=1900 + i) for i in range(KEEP + 3)]
    assert share_filters(path, many) == many[-KEEP:] == read_filters(path)


def test_an_unreadable_file_is_ignored_and_written_again(tmp_path, caplog):
    path = tmp_path / FILE
    for bad in ("{not json", json.dumps({"filters": [{"colour": "red"}]}),
                json.dumps({"filters": [{"year_from": [1]}]}), json.dumps([1, 2])):
        path.write_text(bad)
        assert read_filters(path) == []
    assert "ignored" in caplog.text
    caplog.clear()
    assert read_filters(path) == [] and "ignored" not in caplog.text  # not at every poll
    os.utime(path, ns=(1, 1))  # the file is written again, still damaged: said again
    assert read_filters(path) == [] and "ignored" in caplog.text
    assert share_filters(path, [FigureFilter(pmcid="PMC1")]) == [FigureFilter(pmcid="PMC1")]
    assert read_filters(path) == [FigureFilter(pmcid="PMC1")]


def test_a_data_dir_that_cannot_be_written_only_loses_the_sharing(tmp_path):
    path = tmp_path / "gone" / FILE  # as a read-only replica's: the file cannot be written
    assert share_filters(path, [FigureFilter(year_from=2001)]) == [FigureFilter(year_from=2001)]
    assert read_filters(path) == []
