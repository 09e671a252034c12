"""``caffe.coord_map``: coordinate maps between NetSpec tops and the FCN ``crop`` helper."""
from netspec.coord_map import *  # noqa: F401,F403
from netspec.coord_map import __all__  # noqa: F401
