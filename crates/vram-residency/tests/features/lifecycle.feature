Feature: Shard lifecycle under load and failure
  The refinements of the behaviour catalogue (§8.1): concurrent seals, seal freshness, cleanup
  on drop, several shards across devices, and recovery from errors.

  Scenario: Concurrent seals never over-commit
    Given a VRAM manager with 16 MiB of capacity
    When 8 threads each seal a model of 3 MiB
    Then 4 seals succeed and 4 fail with InsufficientVram
    And 16 MiB of VRAM is used

  Scenario: Seal timestamp freshness
    Given a VRAM manager with 10 MiB of capacity whose seals expire after 500 milliseconds
    And a sealed model of 1 MiB
    When I verify the seal
    Then the verification succeeds
    When I wait 700 milliseconds
    And I verify the seal
    Then the verification fails with SealExpired

  Scenario: Drop releases VRAM once, when the last copy goes
    Given a VRAM manager with 10 MiB of capacity
    And a sealed model of 3 MiB
    When I clone the shard 3 times
    And I drop the original shard
    Then 4 MiB of VRAM is used
    When I drop every copy of the shard
    Then 0 MiB of VRAM is used
    And exactly 1 VramDeallocated event is recorded

  Scenario: Multiple shards across devices
    Given a VRAM manager with devices of 8 MiB and 4 MiB
    And a model of 3 MiB
    When I seal the model on device 0 as shard 0 of 2
    Then the seal succeeds
    When I seal the model on device 1 as shard 1 of 2
    Then the seal succeeds
    And 4 MiB of VRAM is used on device 0
    And 4 MiB of VRAM is used on device 1

  Scenario: Error recovery after a failed allocation
    Given a VRAM manager with 10 MiB of capacity
    And the next allocation fails
    And a model of 1 MiB
    When I seal the model
    Then the seal fails with CudaAllocationFailed
    And 0 MiB of VRAM is used
    When I seal the model
    Then the seal succeeds

  @gpu
  Scenario: Seal and verify on a real GPU
    Given a VRAM manager on GPU 0
    And a model of 1 MiB
    When I seal the model
    Then the seal succeeds
    When I verify the seal
    Then the verification succeeds

  @gpu
  Scenario: Corruption in real VRAM is detected
    Given a VRAM manager on GPU 0
    And a sealed model of 1 MiB
    When a byte of the shard is changed in VRAM
    And I verify the seal
    Then the verification fails with IntegrityViolation
