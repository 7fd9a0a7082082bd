-- fluid's store as the previous release (0140cc1, before hosts: add81a2^) created it: its
-- models' create_all, compiled for this database. Regenerate only to fix a mistake.

CREATE TABLE sandboxes (
	id VARCHAR NOT NULL,
	domain_name VARCHAR NOT NULL,
	image VARCHAR NOT NULL,
	image_version VARCHAR NOT NULL,
	agent_id VARCHAR,
	network VARCHAR NOT NULL,
	ssh_port INTEGER NOT NULL,
	host_key VARCHAR,
	disk_path VARCHAR NOT NULL,
	console_log VARCHAR NOT NULL,
	created_at TIMESTAMP WITH TIME ZONE NOT NULL,
	expires_at TIMESTAMP WITH TIME ZONE NOT NULL,
	parent_id VARCHAR,
	parent_checkpoint VARCHAR,
	owner_run VARCHAR,
	owner_pid INTEGER,
	owner_pid_start INTEGER,
	slot VARCHAR,
	boot VARCHAR,
	spare_state VARCHAR,
	PRIMARY KEY (id)
);

CREATE INDEX ix_sandboxes_owner_run ON sandboxes (owner_run);

CREATE INDEX ix_sandboxes_domain_name ON sandboxes (domain_name);

CREATE INDEX ix_sandboxes_slot ON sandboxes (slot);

CREATE TABLE checkpoints (
	id SERIAL NOT NULL,
	sandbox_id VARCHAR NOT NULL,
	name VARCHAR NOT NULL,
	created_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (sandbox_id, name)
);

CREATE INDEX ix_checkpoints_sandbox_id ON checkpoints (sandbox_id);

CREATE TABLE commands (
	id SERIAL NOT NULL,
	sandbox_id VARCHAR NOT NULL,
	command VARCHAR NOT NULL,
	exit_status INTEGER,
	stdout VARCHAR NOT NULL,
	stderr VARCHAR NOT NULL,
	timed_out BOOLEAN NOT NULL,
	started_at TIMESTAMP WITH TIME ZONE NOT NULL,
	ended_at TIMESTAMP WITH TIME ZONE NOT NULL,
	actor VARCHAR NOT NULL,
	PRIMARY KEY (id)
);

CREATE INDEX ix_commands_sandbox_id ON commands (sandbox_id);

CREATE TABLE agent_runs (
	flow_run_id VARCHAR NOT NULL,
	task VARCHAR NOT NULL,
	production VARCHAR NOT NULL,
	sandbox_id VARCHAR,
	status VARCHAR NOT NULL,
	attempts INTEGER NOT NULL,
	digest VARCHAR,
	message VARCHAR NOT NULL,
	started_at TIMESTAMP WITH TIME ZONE NOT NULL,
	updated_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (flow_run_id)
);

CREATE TABLE decisions (
	id SERIAL NOT NULL,
	flow_run_id VARCHAR NOT NULL,
	attempt INTEGER NOT NULL,
	outcome VARCHAR NOT NULL,
	approver VARCHAR,
	automatic BOOLEAN NOT NULL,
	comment VARCHAR NOT NULL,
	digest VARCHAR,
	decided_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (flow_run_id, attempt)
);

CREATE INDEX ix_decisions_flow_run_id ON decisions (flow_run_id);

CREATE TABLE applies (
	id SERIAL NOT NULL,
	flow_run_id VARCHAR NOT NULL,
	host VARCHAR NOT NULL,
	ok INTEGER NOT NULL,
	changed INTEGER NOT NULL,
	failed INTEGER NOT NULL,
	unreachable INTEGER NOT NULL,
	digest VARCHAR NOT NULL,
	applied_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (id)
);

CREATE INDEX ix_applies_flow_run_id ON applies (flow_run_id);

CREATE TABLE production_vms (
	name VARCHAR NOT NULL,
	domain_name VARCHAR NOT NULL,
	image VARCHAR NOT NULL,
	image_version VARCHAR NOT NULL,
	ssh_port INTEGER NOT NULL,
	host_key VARCHAR,
	disk_path VARCHAR NOT NULL,
	console_log VARCHAR NOT NULL,
	created_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (name)
);

CREATE INDEX ix_production_vms_domain_name ON production_vms (domain_name);

CREATE TABLE audit_log (
	seq INTEGER NOT NULL,
	at TIMESTAMP WITH TIME ZONE NOT NULL,
	kind VARCHAR NOT NULL,
	actor VARCHAR NOT NULL,
	sandbox_id VARCHAR,
	run_id VARCHAR,
	summary TEXT NOT NULL,
	detail TEXT NOT NULL,
	prev_hash VARCHAR NOT NULL,
	hash VARCHAR NOT NULL,
	PRIMARY KEY (seq),
	UNIQUE (prev_hash),
	UNIQUE (hash)
);

CREATE INDEX ix_audit_log_sandbox_id ON audit_log (sandbox_id);

CREATE INDEX ix_audit_log_run_id ON audit_log (run_id);
