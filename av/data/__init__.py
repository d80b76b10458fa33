"""Dataset adapters: logged drives (nuScenes format) in, Scenario values out."""
