"""Tools on top of runs and reports: Grad-CAM (`bench explain`) and performance benchmarks (`bench perf`)."""
