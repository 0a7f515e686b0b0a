Feature: Verify a sealed shard before inference
  Before every inference request the worker re-computes the digest of the bytes in VRAM and
  checks the seal. Tampering with the shard's fields, its seal or its bytes is detected and
  audited as critical.

  Background:
    Given a VRAM manager with 10 MiB of capacity
    And a sealed model of 3 MiB

  Scenario: Verify valid seal
    When I verify the seal
    Then the verification succeeds
    And an audit event SealVerified is recorded

  Scenario: Reject tampered digest
    When the shard's digest is changed after sealing
    And I verify the seal
    Then the verification fails with SealVerificationFailed
    And a critical audit event SealVerificationFailed is recorded

  Scenario: Reject forged signature
    When the shard's signature is replaced with zeros
    And I verify the seal
    Then the verification fails with SealVerificationFailed
    And a critical audit event SealVerificationFailed is recorded

  Scenario: Detect corruption of the bytes in VRAM and stop the worker
    When a byte of the shard is changed in VRAM
    And I verify the seal
    Then the verification fails with IntegrityViolation
    And a critical audit event SealVerificationFailed is recorded
    And the worker is stopped

  Scenario: Reject a shard that no manager sealed
    When I verify a shard built without VRAM
    Then the verification fails with NotSealed

  Scenario: A background scrubber keeps re-verifying the resident shards
    When the scrubber runs until it has verified every shard twice
    Then the verification succeeds
    And an audit event VerificationSummary is recorded

  Scenario: A background scrubber finds a byte changed in VRAM and the worker stops
    When a byte of the shard is changed in VRAM
    And the scrubber runs until it stops on a failure
    Then the verification fails with IntegrityViolation
    And a critical audit event SealVerificationFailed is recorded
    And the worker is stopped
