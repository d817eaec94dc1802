"""What every part of the project shares and that knows nothing of runs, sweeps, models or data:
reading and writing files safely, config checks, building objects from configs."""
