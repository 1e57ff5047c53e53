import numpy as np
import pytest

from rnnkit.cli import main
from rnnkit.data.series import load_bundled, load_csv


def write(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_bundled_series_are_complete_with_their_seasons():
    co2 = load_bundled("co2")
    assert len(co2) == 2284 and co2.season == 52 and co2.horizon == 52 and np.isfinite(co2.values).all()
    elnino = load_bundled("elnino")
    assert len(elnino) == 61 * 12 and elnino.season == 12 and str(elnino.time[13])[:7] == "1951-02"
    assert load_bundled("sunspots").horizon == 10 and load_bundled("macrodata:realgdp").season == 4
    with pytest.raises(ValueError, match="macrodata:COLUMN"):
        load_bundled("macrodata:nothing")


def test_csv_infers_the_frequency_and_reads_covariates(tmp_path):
    path = write(tmp_path, "month,sales,price\n2020-01-01,1,5\n2020-02-01,2,6\n2020-03-01,3,7\n2020-04-01,4,8\n")
    series = load_csv(path, "month", "sales", ("price",))
    assert series.freq == "MS" and series.season == 12
    assert series.values.tolist() == [1, 2, 3, 4] and series.covariates[:, 0].tolist() == [5, 6, 7, 8]
    assert str(series.future_time(2)[1])[:10] == "2020-06-01"


@pytest.mark.parametrize("text, message", [
    ("t,y\n1,1\n2,\n3,3\n", "missing value"),
    ("t,y\n1,1\n2,2\n2,3\n", "duplicated timestamp 2"),
    ("t,y\n1,1\n3,2\n2,3\n", "not sorted"),
    ("t,y\n1,1\n2,abc\n3,3\n", "non-numeric cell 'abc' at data row 2"),
    ("t,y\n1,1\n2,2\n4,3\n", "not a regular grid"),
    ("t,value\n1,1\n2,2\n", "no column 'y'"),
])
def test_bad_csv_gets_one_clear_error(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        load_csv(write(tmp_path, text), "t", "y")


def test_fill_interpolates_values_and_gaps(tmp_path):
    assert load_csv(write(tmp_path, "t,y\n1,1\n2,\n3,5\n"), "t", "y", fill="interpolate").values.tolist() == [1, 3, 5]
    gap = write(tmp_path, "t,y\n2001-01-01,1\n2001-02-01,2\n2001-03-01,3\n2001-05-01,7\n", "gap.csv")
    filled = load_csv(gap, "t", "y", freq="MS", fill="ffill")
    assert filled.values.tolist() == [1, 2, 3, 3, 7]


def test_cli_reports_bad_csv_with_exit_status_2(tmp_path, capsys):
    path = write(tmp_path, "t,y\n1,1\n2,2\n2,3\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["forecast", "--csv", str(path), "--time", "t", "--target", "y", "--runs-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "duplicated timestamp" in capsys.readouterr().err
