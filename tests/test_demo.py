"""Issue #12: the main job's closing block names, for both models, the copy fraction and FID."""

from lightning_diff.demo import summary_lines


def test_the_summary_shows_copy_fractions_and_every_fid_of_both_models():
    results = {
        "unet": {"copy_fraction": 0.0156, "fid@64": 48.31, "memorized_fraction": 0.0156},
        "empirical": {"copy_fraction": 1.0, "fid_train@64": 12.04, "kid_train@64": 0.01},
    }
    lines = summary_lines(results)
    assert lines[1] == "  paper UNet (per level):          copies 0.016, fid@64 48.3"
    assert lines[2] == "  empirical (Bayes-optimal) model: copies 1.000, fid_train@64 12.0"


def test_without_fid_weights_the_summary_says_so():
    lines = summary_lines({"unet": {"copy_fraction": 0.5}, "empirical": {"copy_fraction": 1.0}})
    assert all("FID not measured (see the warning above)" in line for line in lines[1:])
