# flowjit's own cache=True helpers are cached under the flowjit cache directory: the
# locator goes in before any module of this package decorates one (helper_cache.py)
from .helper_cache import install as _install_helper_cache

_install_helper_cache()
