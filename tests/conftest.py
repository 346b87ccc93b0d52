"""Shared fixtures: a small demo data set (4 training, 2 test subjects) so end-to-end tests stay quick."""
import pytest
from sr3d.prepare import prepare_demo

@pytest.fixture(scope='session')
def small_data(tmp_path_factory):
    "The list file of a small demo data set, made once per test session."
    return str(prepare_demo(out=tmp_path_factory.mktemp('data')/'demo_small', seed=0, n_train=4, n_test=2))


@pytest.fixture(scope='session')
def small_thick_data(tmp_path_factory):
    "The same small demo data set with slices 4x thicker than their pixels (pooled by 1,1,4)."
    return str(prepare_demo(out=tmp_path_factory.mktemp('data')/'demo_thick', seed=0, n_train=4, n_test=2, scale='1,1,4'))
