-- An owed write that failed for a reason that will not go away (the other side refuses
-- it) is parked: kept with its error, skipped by repair so it blocks no other write, and
-- retried only on request.

alter table agent_memory_owed add column parked text;
alter table agent_memory_owed add column parked_at text;
