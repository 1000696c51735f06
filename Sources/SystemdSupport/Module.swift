// Module SystemdSupport.
