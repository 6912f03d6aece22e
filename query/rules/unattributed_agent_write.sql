-- id: unattributed_agent_write
-- title: Agent write with no human or approved owner behind it
-- severity: high
-- owasp_nhi: NHI1
-- per: chain
-- description: >
--   An agent changed something (a row written, a message sent, an unsafe HTTP call) and neither
--   a human at the head of its chain nor an approved, unexpired owner of the agent, its
--   credential or its service answers for it. An identity nobody is accountable for is the
--   ownership gap OWASP NHI1 (improper offboarding) describes.
SELECT time,
       'agent' AS subject_kind,
       agents[1] AS subject_id,
       concat(effect_operation, ' ', effect_target, ' by ', array_to_string(agents, ' > '),
              ' with no human or approved owner') AS detail,
       trace_id,
       effect_span_id AS span_id
FROM chains_attributed
WHERE cardinality(agents) > 0 AND effect_is_write AND NOT traceable
