"""How ingest's CPU stage and embedding actors share the cluster's CPUs (ingest/stage_plan.py)."""

from __future__ import annotations

from dermground.ingest.stage_plan import StagePlan, plan_stages


def test_spare_cpus_go_to_a_separate_cpu_stage_one_per_task():
    assert plan_stages(2, actors=1, cpus_per_actor=1) == StagePlan(1, 1)
    assert plan_stages(16, actors=2, cpus_per_actor=4) == StagePlan(4, 8)
    assert plan_stages(3, actors=1, cpus_per_actor=1.5) == StagePlan(1.5, 1)
    assert not plan_stages(2, actors=1, cpus_per_actor=1).prep_inline


def test_actors_holding_every_cpu_prepare_their_images_inline():
    # The default shares all CPUs among the actors: a separate stage would only take the model's cores.
    plan = plan_stages(2, actors=1, cpus_per_actor=None)
    assert plan == StagePlan(2, 0) and plan.prep_inline and plan.torch_threads == 2
    assert plan_stages(5, actors=2, cpus_per_actor=None) == StagePlan(2, 1)
    assert plan_stages(2, actors=4, cpus_per_actor=1).prep_inline  # over-subscribed: nothing spare
    assert plan_stages(2.5, actors=1, cpus_per_actor=2).prep_inline  # half a CPU is not a task's worth


def test_gpu_actors_take_one_cpu_each_by_default_and_leave_the_rest_to_preparation():
    plan = plan_stages(16, actors=1, cpus_per_actor=None, gpus_per_actor=1)
    assert plan == StagePlan(1.0, 15)
    assert plan.torch_threads == 1
    assert plan_stages(16, actors=2, cpus_per_actor=4, gpus_per_actor=1).prep_tasks == 8
    assert plan_stages(8, actors=1, cpus_per_actor=2.5).torch_threads == 2
